"""pan_model: the Part-Aware Network for occluded person re-identification, its
PCB and global baselines, data, metrics and the training engine."""

__version__ = "0.1.0"


def build_model(arch: str, num_classes: int, **options):
    """Build "pan", "pcb" or "global" (see pan_model.models)."""
    from .models import build_model as _build

    return _build(arch, num_classes, **options)


__all__ = ["build_model"]

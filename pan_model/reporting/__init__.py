"""What a trained model looks like to people: score tables, figures (plots), and its cost
(profiling). Everything here reads results and models; nothing trains."""

from .figures import write_figures
from .profiling import count_flops, count_parameters, profile_model
from .tables import chance_rank1, cost_table, scores_table

__all__ = ["chance_rank1", "cost_table", "count_flops", "count_parameters", "profile_model", "scores_table", "write_figures"]

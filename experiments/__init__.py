"""Accuracy studies and mask diagnostics, run from the repository root as
`python -m experiments.<name>` (their write-ups: notes/)."""

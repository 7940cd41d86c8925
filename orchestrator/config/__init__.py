"""From a study name and overrides to a plan: Hydra compose, the grid, the search space."""

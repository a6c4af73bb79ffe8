"""The study: variants trained per seed and fold, the grid that runs them, the report."""

"""Reports over results on disk: the PTQ report, statistics, corruptions, figures and tables."""

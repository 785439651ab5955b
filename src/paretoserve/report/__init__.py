"""Reports: terminal tables and HTML pages of runs."""

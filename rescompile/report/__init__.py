"""Reports for people and CI: renderers of the typed :class:`~rescompile.validate.results.Report` (Markdown, JUnit,
HTML with its SVG charts and block picture, the console table), writing them all (``write.py``), and comparing two
reports (``compare.py``). Nothing here measures: the numbers come from ``validate/``."""

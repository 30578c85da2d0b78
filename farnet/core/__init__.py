"""The core every other part stands on: errors that name the file and key (``errors``), atomic file writes and
JSON/CSV reading (``fileio``), the one pixel-centre convention (``coords``), devices and fast paths
(``fastpath``), checkpoint files (``checkpoint``) and the allocator setting (``allocator``)."""

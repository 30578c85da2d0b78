"""FARNet replication suite: the library (see README.md, "Layout")."""

"""The index moved to :mod:`openeva.index` (segments, memory maps, filters; issue 25): this name stays as a
re-export for code that imports ``openeva.serve.index``."""

from openeva.index import MAX_K, Index, SearchFilter, check_output_folder

__all__ = ["MAX_K", "Index", "SearchFilter", "check_output_folder"]

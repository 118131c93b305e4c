"""The search index: compressed, on disk, memory-mapped, growing by segments (issue 25).

``Index.build(embedding_dirs, out)`` streams ``openeva embed`` shards into a FAISS index chosen by size and a
memory budget (:mod:`.ann`), measured on held-out queries (:mod:`.recall`); ``Index.open(path)`` maps it;
``search`` (filters: :class:`SearchFilter`, threshold, ``k <= MAX_K``), ``add`` (a new segment), ``delete``
(tombstones), ``compact``, ``range_search``, ``iter_vectors``; the layout is in :mod:`.store`.
"""

from openeva.index.ann import KINDS, parse_size
from openeva.index.core import EXACT_SCAN, MAX_K, Index
from openeva.index.filters import SearchFilter
from openeva.index.store import check_output_folder

__all__ = ["EXACT_SCAN", "KINDS", "MAX_K", "Index", "SearchFilter", "check_output_folder", "parse_size"]

"""Make ``unigrad_lib`` importable for the tests of this folder without putting papers/unigrad on sys.path
(its script names, e.g. ``pretrain``, must not shadow other folders' modules). Scripts are loaded by path."""
from paper_import import paper_dir, register_package

UNIGRAD_DIR = paper_dir("unigrad")
register_package("unigrad", "unigrad_lib")

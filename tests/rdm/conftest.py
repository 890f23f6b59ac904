"""Make ``rdm_lib`` importable for these tests without putting papers/rdm on sys.path (its script names,
e.g. ``main_lincls``, must not shadow other folders' modules). Scripts are loaded by path."""
from paper_import import paper_dir, register_package

RDM_DIR = paper_dir("rdm")
register_package("rdm", "rdm_lib")

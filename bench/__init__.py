"""kduflow's benchmark harness (``./run bench``); see ``bench/__main__.py`` for what it measures."""

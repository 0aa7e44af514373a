"""The shared vocabulary of cloudvac.

Everything else may import ``model``; ``model`` imports nothing else of cloudvac.  It holds
what every layer must agree on: machine states and shutdown codes (``states``), what the
store remembers about a machine (``records``), what a cloud reports and the protocol it is
reached through (``cloud``), the cloud error taxonomy (``errors``), the observer that
metrics implement (``observer``), machine names (``naming``), the URL and file layout that
VMs, the web service and the simulator share (``layout``), and the share arithmetic
(``shares``).
"""

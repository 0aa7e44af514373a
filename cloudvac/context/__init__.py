"""What runs inside a VM: the in-VM agent (``agent.py``, shipped verbatim in user_data)."""

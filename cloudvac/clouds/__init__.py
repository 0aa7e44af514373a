"""Cloud adapters behind one small protocol (see ``base``): ``sim`` (embedded simulated
cloud) and, later, ``openstack``.  Import the adapter module you need directly; this package
imports nothing so that using the simulator never pulls in openstacksdk."""

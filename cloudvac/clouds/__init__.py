"""Cloud adapters behind the one small protocol of ``model.cloud``: ``openstack``
(openstacksdk + keystoneauth1) and ``sim`` (the embedded simulated cloud, whose pilots
report through ``simpilots``).  Import the adapter module you need directly; this package
imports nothing so that using the simulator never pulls in openstacksdk."""

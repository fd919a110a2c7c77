"""The PLC's interface: an OPC UA server (asyncua) with each camera's latest result, the station state and the
changeover / trigger methods (docs/plc.md). config.py and users.py need no asyncua; server.py and sink.py do."""

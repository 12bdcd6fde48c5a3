"""eddy's streaming side: settings, wire format, broker, topics, agents and the command line."""

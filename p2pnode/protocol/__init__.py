"""Pure protocol policy and state machines: no trio, no sockets, time passed in."""

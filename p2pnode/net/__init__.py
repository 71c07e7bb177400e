"""The libp2p shell: host, gossip, discovery. Everything here does I/O."""

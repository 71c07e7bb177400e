"""The market as one node sees it: capacity table, rate limits, provider selection. Pure."""

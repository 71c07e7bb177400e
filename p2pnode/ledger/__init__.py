"""The signed, hash-chained ledger of every interaction, and what it is read into."""

"""Wire formats: strict CBOR codec, peer ids, signed envelopes, message schemas. Pure: no I/O."""

"""Builders of the demo's and the tests' tiny models and tokenizers, offline; outside the library,
which never imports them."""

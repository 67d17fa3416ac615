"""How bytes move between sites. Transports know nothing about algorithms."""

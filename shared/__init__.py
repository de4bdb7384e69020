"""Code that two or more Janus services import."""

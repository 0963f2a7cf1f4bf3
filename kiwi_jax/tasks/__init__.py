"""Kiwi-Edit training: the three-stage curriculum on the generic trainer."""

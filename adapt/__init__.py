"""The adaptation path (RedWhale): an English model given a Korean vocabulary and trained in phases."""

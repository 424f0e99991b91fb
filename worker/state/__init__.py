"""Per-key recurrent state: the in-process LRU and its backing state topic."""

"""Conventional sequential recommenders (GRU4Rec, Caser, SASRec) ranked over each record's own
candidates, so they sit in one table with the LM rows. `python -m baselines --help`."""

"""Datasets for S-DPO, in the original release's JSON format (see data/README.md).

    python -m data.prepare --dataset lastfm      # official raw files -> data/lastfm/{train,val,test}.json
    python -m data.synthetic --out_dir DIR       # a synthetic dataset with a known best HR@1

Modules: ``prepare`` (the command), one reader per dataset (``lastfm``, ``movielens``, ``goodreads``),
``lastfm_sdpo`` (the original release's split files), ``download`` (download and cache),
``locate_raw_files`` (a local copy or the download), ``raw_files`` (reading raw files line by line),
``protocol`` (sequences, filtering, split, item names, candidate sampling), ``synthetic``.
"""

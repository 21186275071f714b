"""CLIP search over a dataset version: index (embed, group duplicates, faiss), serve (HTTP + web page).

Stages, one file each: `embed` (a shard -> embeddings), `index` (parts -> metadata, pictures,
faiss), `store` (an index opened for serving: knn with filters), `query` (text, picture or
picture URL -> vector), `service` (FastAPI), `static/` (the page), `demo` (the `make demo` hook).
"""

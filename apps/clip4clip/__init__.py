"""CLIP4Clip: text-to-video retrieval with a CLIP, its similarity heads, and a tool to search one's own videos.

Stages, one per module: `video` (PyAV frame sampling) -> `cache` (frame features, encoded once) ->
`heads` (meanP, seqLSTM, seqTransf, tightTransf) -> `train` (symmetric CE, evaluation) with
`metrics` (R@k, MdR, MnR, tie rule) -> `index` (embeddings + faiss) -> `search` (ranked results,
HTML page). `synth` writes the synthetic moving-shapes video set; `captions` reads MSR-VTT files.
"""

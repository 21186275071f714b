"""CLIPDraw: text prompt to a drawing of coloured Bézier strokes, with CLIPasso's rasterizer and augmentations."""

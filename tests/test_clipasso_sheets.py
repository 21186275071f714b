"""The clipasso contact and verdict sheets share one grid: the verdict text lands in the verdict column
whatever the cell size."""

import numpy as np
import pytest

from apps.clipasso.evaluate import SheetGrid, contact_sheet, verdict_sheet

NAMES = ("cat", "dog", "sun")


def _dark_pixels(sheet: np.ndarray, grid: SheetGrid, row: int, column: int) -> int:
    """Near-black pixels inside the tile at (row, column), its grey outline excluded."""
    x, y = grid.origin(row, column)
    tile = sheet[y + 1 : y + grid.cell - 1, x + 1 : x + grid.cell - 1]
    return int((tile.max(axis=2) < 60).sum())


@pytest.mark.parametrize("cell", [96, 128, 200])
def test_the_verdicts_are_written_into_the_fourth_column(cell):
    # flat grey pictures: their tiles and XDoG edge maps hold no black, so any black in a tile is text
    sources = np.full((len(NAMES), 48, 48, 3), 150, np.uint8)
    sketches = np.full_like(sources, 230)
    report = {
        "images": [
            {"image": name, "nearest_source": NAMES[0], "judge_nearest_source": name} for name in NAMES
        ]
    }
    sheet = verdict_sheet(sources, sketches, report, "16 strokes", cell=cell)
    grid = SheetGrid(cell)
    assert sheet.size == grid.size(len(NAMES), 4)
    pixels = np.asarray(sheet)
    for row in range(len(NAMES)):
        assert [_dark_pixels(pixels, grid, row, c) for c in range(3)] == [0, 0, 0], f"row {row}, cell {cell}"
        assert _dark_pixels(pixels, grid, row, 3) > 50, f"row {row}, cell {cell}: no verdict text"
    # nothing black between the tiles either: the text starts inside the verdict column, below the titles
    titles = pixels[: grid.title]
    assert (titles.max(axis=2) < 60).any()
    body = pixels[grid.title :].copy()
    x, _ = grid.origin(0, 3)
    body[:, x:] = 255
    assert not (body.max(axis=2) < 60).any()


def test_the_contact_sheet_grows_with_its_cell_and_places_each_picture_on_the_grid():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    rows = [("a", [red, red]), ("b", [red, red])]
    for cell in (64, 160):
        grid = SheetGrid(cell)
        sheet = np.asarray(contact_sheet(rows, ["source", "sketch"], cell=cell))
        assert sheet.shape[1::-1] == grid.size(2, 2)
        for r in range(2):
            for c in range(2):
                x, y = grid.origin(r, c)
                assert (sheet[y : y + cell, x : x + cell] == (255, 0, 0)).all()
                assert (sheet[y + cell + 1, x : x + cell] == 255).all()  # the pad below is white

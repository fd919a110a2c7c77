import pytest

from runtime.pipeline.prompt import ALL_POSITIONS, POSITIONS, cell_position, parse_answer, product_question, question_text


@pytest.mark.parametrize("pos", ALL_POSITIONS)
def test_one_anomaly_every_position(pos):
    verdict, locs = parse_answer(f"Yes, there is an anomaly in the image, at the {pos} of the image.")
    assert verdict is True and locs == [pos]


def test_two_anomalies():
    text = "Yes, there are 2 anomalies in the image, they are at the top left and bottom of the image."
    assert parse_answer(text) == (True, ["top left", "bottom"])


def test_no_and_gibberish():
    assert parse_answer("No, there is no anomaly in the image.") == (False, [])
    assert parse_answer("qzx vol") == (None, [])


def test_question_formats():
    assert question_text("Q1") == "Q1\n### Assistant:"
    two = question_text("Q2", [("Q1", "A1")])
    assert two == "Q1\n### Assistant: A1\n### Human: Q2\n### Assistant:"
    assert product_question("This is a photo of a cookie.") == "This is a photo of a cookie. Is there any anomaly in the image?"
    assert product_question(None) == "Is there any anomaly in the image?"


def test_cells_row_first():
    assert cell_position(10, 200) == "top right"
    assert cell_position(200, 10) == "bottom left"
    assert cell_position(112, 112) == "center"
    assert [cell_position(r, c) for r in (0, 112, 223) for c in (0, 112, 223)] == [p for row in POSITIONS for p in row]

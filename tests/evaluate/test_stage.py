from ftcompare.evaluate.stage import running_total


def test_generation_progress_moves_to_the_running_total_of_finished_problems():
    positions = []
    add = running_total(positions.append)
    add(2)
    add(3)
    assert positions == [2, 5]  # not one step per batch: a bar over 60 problems ends at 60

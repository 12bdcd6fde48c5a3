from eddy.streams.ops.cli import main


def test_catalogue_lists_the_online_models(capsys):
    assert main(["catalogue"]) == 0
    out = capsys.readouterr().out
    assert "scaled-logreg" in out and "torch-mlp" in out


def test_worker_refuses_an_unknown_model_before_touching_kafka(capsys):
    assert main(["worker", "--model", "xgboost", "--bootstrap", "127.0.0.1:1"]) == 1
    assert "unknown model 'xgboost'" in capsys.readouterr().err


def test_worker_refuses_a_model_that_cannot_do_the_task(capsys):
    assert main(["worker", "--model", "logreg", "--task", "regression"]) == 1
    assert "set the stream's task" in capsys.readouterr().err

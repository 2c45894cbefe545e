"""One module per studio tab, in the order of the job: model, data, train, evaluate, predict, export.
Each builds its widgets and wires them to engine functions; none holds engine logic."""

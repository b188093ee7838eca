"""Small recurrent models the pass tests share (T = 5 steps, 4 units: fast in ORT)."""

T = 5

# the last hidden state feeds a classifier
LAST = """\
x = input(float32, [N, {T}, 2])
y = input(int64, [N])
h = {kind}(x, 4{extra})
logits = linear(h, 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""

# every step's hidden state feeds a regression target
SEQ = """\
x = input(float32, [N, {T}, 2])
target = input(float32, [N, {T}, 1])
h = {kind}(x, 4, return_sequences=True{extra})
prediction = linear(h, 1)
loss = mse(prediction, target)
output(prediction)
minimize(loss)
"""


# the variants the pass tests run: each kind, truncated BPTT, and a loss on every step
PASS_MODELS = {
    "rnn": LAST.format(T=T, kind="rnn", extra=""),
    "lstm": LAST.format(T=T, kind="lstm", extra=""),
    "gru": LAST.format(T=T, kind="gru", extra=""),
    "lstm_bptt2": LAST.format(T=T, kind="lstm", extra=", bptt=2"),
    "gru_seq": SEQ.format(T=T, kind="gru", extra=""),
    "rnn_seq_bptt2": SEQ.format(T=T, kind="rnn", extra=", bptt=2"),
}

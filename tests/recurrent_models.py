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

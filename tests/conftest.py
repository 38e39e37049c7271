"""Suite-wide settings.

One intra-op thread: the tests run many small ops, where a second thread buys nothing on an idle
2-core machine (the whole suite: 233 s with one thread, 240 s with two) and, on a machine whose
cores are busy with other jobs, makes torch's thread barriers wait on descheduled threads (small-op
tests then ran 10-40x slower here).
"""

import torch

torch.set_num_threads(1)

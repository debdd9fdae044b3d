"""The paper's experiments: the constructed Table 1 and bound, and the trained width experiment."""

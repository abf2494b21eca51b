"""effnet search: the paper's grid search for alpha, beta, gamma and the scaling study."""

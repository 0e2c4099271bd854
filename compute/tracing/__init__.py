"""Tracing one token through the model: rollout, flow, logit lens, head contributions, neuron view.

forward.run_forward collects everything in one instrumented forward; the other modules are functions
of its ForwardTrace (numpy), plus the model's final norm and unembedding for the lens and contributions;
trace.build_trace assembles trace.json.
"""

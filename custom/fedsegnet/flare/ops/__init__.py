"""Operator tooling around FLARE: what people run, never what a job's configs name.

- :mod:`~fedsegnet.flare.ops.jobs`: locate job folders, set their job args, pack them, run them in
  FLARE's simulator and find what a run left;
- :mod:`~fedsegnet.flare.ops.poc`: FLARE POC mode on one machine (startup kits, processes, jobs
  through the admin API);
- :mod:`~fedsegnet.flare.ops.policy`: admit FedSegNet's components in a site's
  ``local/resources.json``.

The runtime components that FLARE builds from a job's configs (learner, filters, aggregator,
persistor, workflow, widgets) live one level up in :mod:`fedsegnet.flare` and never import this
package.
"""

"""The repair workflow: the policy and edit vocabulary (`policy`), planning edits from an audit
(`plan`), human review of flags and edits in one vocabulary (`review`), and writing the repaired
splits (`export`). Generation proper (counterfactual text and images, verification, rebalancing)
is in generators/, which this package drives."""

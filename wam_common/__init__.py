"""Shared ROS glue for the wam_policy package.

Small, pure-Python pieces every node uses: configuration and the graph description
(`config`, `graph`), ROS parameter plumbing (`params`), QoS profiles (`qos`), zero-copy
image CDR codec (`imageio`), the topic table (`topics`), and the node entry wrapper
(`node_main`). Recording, analysis and the `wam-policy` CLI live in sub-packages.
"""

#
# Cookbook:: backup_agent
# Attributes:: storage_node
#
# The backup storage cluster (recipe backup_agent::storage_node, docs/STORAGE_CLUSTER.md) and how
# agents find it. Nothing secret here: the S3 identity is the data bag item's key pair.

# --- storage nodes ---------------------------------------------------------------------------
# The Chef search that finds the other members; the recipe adds `AND chef_environment:<this
# node's environment>`, so each environment has its own cluster. A node is in the index after
# its first converge: a cluster grows to 3 masters on the run after the third node registered.
default['backup_agent']['storage_node']['search'] = 'recipes:backup_agent\:\:storage_node'
# The address the others and the agents dial; nil: node['ipaddress']. Published, with the
# ports, as node['backup_agent']['storage_node']['advertise'] for the others' searches.
default['backup_agent']['storage_node']['ip'] = nil
default['backup_agent']['storage_node']['bind'] = '0.0.0.0'
# gRPC listens on each port + 10000 as well.
default['backup_agent']['storage_node']['ports'] = { 'master' => 9333, 'volume' => 8080, 'filer' => 8888, 's3' => 8333 }
# 1 master for one or two members, 3 (a raft that survives one loss) from three members on.
default['backup_agent']['storage_node']['max_masters'] = 3
# xyz = extra copies in other data centers, other racks, other servers. 010: one more copy on
# another rack; with rack = availability zone (the default on EC2) every object survives the
# loss of a node or of a whole AZ, at 2x the raw storage.
default['backup_agent']['storage_node']['replication'] = '010'
# nil: on EC2 the region and the availability zone (Ohai's ec2 data), elsewhere 'dc1' and the node name.
default['backup_agent']['storage_node']['data_center'] = nil
default['backup_agent']['storage_node']['rack'] = nil
default['backup_agent']['storage_node']['volume_size_limit_mb'] = 1024
default['backup_agent']['storage_node']['volume_max'] = 0
# Minutes between the master leader's repair runs (volume.fix.replication: a volume short of
# copies, after a node was lost or came back, is replicated again; extra copies are dropped).
default['backup_agent']['storage_node']['maintenance_minutes'] = 17
default['backup_agent']['storage_node']['data_dir'] = '/srv/seaweedfs'
default['backup_agent']['storage_node']['install_dir'] = '/opt/seaweedfs'
# What the agents' key pair may do on the data bag item's bucket (SeaweedFS actions). Admin
# lets `backup-agent bucket setup` create the bucket and set versioning.
default['backup_agent']['storage_node']['s3_actions'] = %w(Read Write List Tagging Admin)

# --- agents ----------------------------------------------------------------------------------
# A Chef search for the storage nodes whose S3 gateways this agent uses (storage.endpoints, in
# an order of its own, failing over to the next when one does not answer), e.g.
# 'recipes:backup_agent\:\:storage_node'; the environment is added as above. nil: the data bag
# item's endpoint_url (or AWS). The item then must not set endpoint_url.
default['backup_agent']['storage_nodes']['search'] = nil

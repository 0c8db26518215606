#
# Cookbook:: backup_agent
# Recipe:: storage_node
#
# Makes this node a member of the environment's backup storage cluster (SeaweedFS: masters,
# volume servers with replication across nodes, filers, S3 gateways; docs/STORAGE_CLUSTER.md).
# The members find each other through Chef search; the gateway's identity is the data bag
# item's key pair (the one the environment's agents sign with), rendered 0600 and never put in
# an attribute. Everything is done by the backup_agent_storage_node resource.

helpers = self
settings = node['backup_agent']['storage_node']

ip = settings['ip'] || node['ipaddress']
ec2 = node['ec2'] || {}
advertise = { 'ip' => ip }.merge(settings['ports'].to_h.transform_keys { |role| "#{role}_port" })
# What the other members and the agents read in their searches (nothing secret).
node.default['backup_agent']['storage_node']['advertise'] = advertise

members = BackupAgentCookbook::StorageCluster.members(
  backup_agent_storage_search(settings['search']), 'name' => node.name, 'advertise' => advertise
)
masters = BackupAgentCookbook::StorageCluster.masters(members, settings['max_masters'])
Chef::Log.info("backup_agent: storage cluster of #{node.chef_environment}: #{members.map { |m| m['name'] }.join(', ')}; " \
               "masters #{masters.map { |m| m['name'] }.join(', ')}")

backup_agent_storage_node node.name do
  ip ip
  bind settings['bind']
  ports settings['ports'].to_h
  masters masters.map { |member| BackupAgentCookbook::StorageCluster.address(member, 'master') }
  run_master masters.any? { |member| member['name'] == node.name }
  replication settings['replication']
  data_center settings['data_center'] || ec2['region'] || 'dc1'
  rack settings['rack'] || ec2['placement_availability_zone'] || node.name
  volume_size_limit_mb settings['volume_size_limit_mb']
  volume_max settings['volume_max']
  maintenance_minutes settings['maintenance_minutes']
  data_dir settings['data_dir']
  install_dir settings['install_dir']
  python node['backup_agent']['install']['python']
  pip_env helpers.backup_agent_pip_env
  s3_config BackupAgentCookbook::StorageCluster.s3_config(helpers.backup_agent_secrets, settings['s3_actions'])
  manage_services helpers.backup_agent_service_managed?
end

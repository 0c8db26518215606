#
# Cookbook:: backup_agent
# Library:: storage_cluster
#
# Pure helpers of the backup storage cluster (recipe backup_agent::storage_node): which members a
# Chef search found, which of them run a master, the S3 endpoints an agent tries in order, and
# the gateway's identities file. No node, no I/O: the specs call them directly.
#
# A member is a Hash with 'name' and the 'advertise' map each storage node publishes in its
# attributes (ip and the four ports; nothing secret): node['backup_agent']['storage_node']['advertise'].

require 'etc'
require 'json'
require 'zlib'

module BackupAgentCookbook
  module StorageCluster
    ROLES = %w(master volume filer s3).freeze

    module_function

    # The search's rows plus this node (a node is in the index only after its first converge),
    # the rows without an advertise map dropped (a node whose first run failed), by name.
    # me: nil for an agent (not a member).
    def members(rows, me = nil)
      found = Array(rows).map { |row| plain(row) }.select { |row| row['advertise'].is_a?(Hash) && row['name'] }
      found.reject! { |row| row['name'] == me['name'] } if me
      found << plain(me) if me
      found.sort_by { |row| row['name'] }
    end

    # Raft wants an odd number of masters: 1 for one or two members, 3 from three on (at most
    # max_masters), the first ones by name so every member picks the same set.
    def masters(members, max_masters = 3)
      count = [members.size, max_masters].min
      count -= 1 if count.even?
      members.first([count, 1].max)
    end

    def address(member, role)
      "#{member['advertise']['ip']}:#{member['advertise']["#{role}_port"]}"
    end

    def master_list(members, max_masters = 3)
      masters(members, max_masters).map { |member| address(member, 'master') }
    end

    # An agent's storage.endpoints: every gateway, the node's own first choice first. Rotating the
    # sorted list by a stable hash of the agent's name spreads a fleet over the gateways, and
    # each agent keeps the same order from one converge to the next (no needless config change).
    def endpoints(members, agent_name)
      urls = members.sort_by { |row| row['name'] }.map { |row| "http://#{address(row, 's3')}" }.uniq
      return urls if urls.empty?
      urls.rotate(Zlib.crc32(agent_name.to_s) % urls.size)
    end

    # The S3 gateway's identities (weed s3 -config): the agents' key pair from the data bag item,
    # allowed `actions` on the item's bucket only.
    def s3_config(secrets, actions)
      key = secrets['access_key_id']
      secret = secrets['secret_access_key']
      unless key && secret
        raise SecretsError, 'backup_agent: a storage node needs access_key_id and secret_access_key in the data ' \
                            'bag item: they become the S3 identity the agents sign with'
      end
      identity = {
        'name' => 'backup-agent',
        'credentials' => [{ 'accessKey' => key, 'secretKey' => secret }],
        'actions' => Array(actions).map { |action| "#{action}:#{secrets['bucket']}" },
      }
      JSON.pretty_generate('identities' => [identity]) + "\n"
    end

    def user?(name)
      !Etc.getpwnam(name).nil?
    rescue ArgumentError
      false
    end

    def plain(value)
      JSON.parse(JSON.generate(value))
    end
  end
end

module BackupAgentCookbook
  # Recipe DSL (with the cookbook's other helpers): the searches of storage nodes and agents.
  module StorageClusterHelpers
    # The members of this environment's cluster the Chef server knows: name and advertise map
    # (a partial search: nothing else of those nodes is fetched).
    def backup_agent_storage_search(query)
      query = "(#{query}) AND chef_environment:#{node.chef_environment}"
      search(:node, query, filter_result: { 'name' => ['name'],
                                            'advertise' => %w(backup_agent storage_node advertise) })
    end

    # node['backup_agent']['config'] with storage.endpoints from the storage nodes' search, when
    # node['backup_agent']['storage_nodes']['search'] names one.
    def backup_agent_config_settings
      settings = node['backup_agent']['config']
      query = node['backup_agent']['storage_nodes']['search']
      return settings if query.nil? || query.to_s.empty?

      members = StorageCluster.members(backup_agent_storage_search(query))
      if members.empty?
        raise ConfigError, "backup_agent: node['backup_agent']['storage_nodes']['search'] (#{query}) finds no storage " \
                           "node in environment #{node.chef_environment}: converge the storage nodes first"
      end
      if (node.run_state[RUN_STATE_KEY] || {})['endpoint_url']
        raise ConfigError, "backup_agent: the data bag item sets endpoint_url, and node['backup_agent']['storage_nodes']" \
                           "['search'] is set too: remove endpoint_url from the item (the storage nodes are the endpoints)"
      end
      endpoints = StorageCluster.endpoints(members, node.name)
      StorageCluster.plain(settings).tap { |plain| (plain['storage'] ||= {})['endpoints'] = endpoints }
    end
  end
end

Chef::DSL::Recipe.include(BackupAgentCookbook::StorageClusterHelpers)

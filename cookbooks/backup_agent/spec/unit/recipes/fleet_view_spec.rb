require_relative '../../spec_helper'

describe 'backup_agent::fleet_view' do
  include_context 'with backup_agent data bag'

  settings_file = '/etc/backup-agent/fleet_view.json'
  cookbook = File.expand_path('../../..', __dir__)

  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
    end.converge('backup_agent::default')
  end

  it 'is part of the default recipe' do
    expect(chef_run).to include_recipe('backup_agent::fleet_view')
  end

  # chef-client loads a cookbook's ohai/ plugins before compiling, on every run.
  it 'ships the plugin in the cookbook\'s ohai/ directory, not as a file it copies' do
    expect(File).to exist(File.join(cookbook, 'ohai', 'backup_agent.rb'))
    expect(File).not_to exist(File.join(cookbook, 'files', 'ohai', 'backup_agent.rb'))
    expect(chef_run.find_resources(:cookbook_file).map(&:name).grep(/ohai/)).to eq([])
  end

  it 'removes the copy earlier versions put into Ohai\'s plugin_path' do
    expect(chef_run).to delete_file('/etc/chef/ohai/plugins/backup_agent.rb')
    expect(chef_run).to delete_file('/etc/chef/ohai/plugins/backup_agent.json')
  end

  it 'tells the plugin where the agent and its config are, and the tolerance, where it looks' do
    expect(chef_run).to(render_file(settings_file).with_content do |content|
      expect(JSON.parse(content)).to eq('bin' => '/opt/backup-agent/bin/backup-agent',
                                        'config' => BackupAgentSpec::CONFIG_PATH,
                                        'stale_after_periods' => 2)
    end)
    expect(File.read(File.join(cookbook, 'ohai', 'backup_agent.rb'))).to include("|| '#{settings_file}'")
  end

  it 'reloads the plugin at the end of a run that changed its settings, and only then' do
    ohai = chef_run.ohai('backup_agent')
    expect(ohai).to do_nothing
    expect(ohai.plugin).to eq('backup_agent')
    expect(chef_run.file(settings_file)).to notify('ohai[backup_agent]').to(:reload).delayed
  end

  context 'with the config elsewhere' do
    let(:chef_run) do
      ChefSpec::SoloRunner.new do |node|
        node.chef_environment = 'staging'
        node.override['backup_agent']['config_path'] = '/srv/ba/config.yaml'
        node.override['backup_agent']['fleet_view']['settings_file'] = '/srv/ohai/fleet_view.json'
      end.converge('backup_agent::default')
    end

    it 'writes the settings where the attribute says, making the directory' do
      expect(chef_run).to create_directory('/srv/ohai').with(recursive: true)
      expect(chef_run).to render_file('/srv/ohai/fleet_view.json').with_content(%r{"config": "/srv/ba/config.yaml"})
    end
  end
end
